# frozen_string_literal: true

require_relative 'test_helper'

class ResourcesTest < Minitest::Test
  include RunnerTest

  def setup
    super
    write_context(properties: { 'project' => { 'melbourne_resource' => { 'name' => 'Melbourne', 'weather' => 'cold' } } })
  end

  def lines(result) = result.stdout.lines.map(&:chomp)

  CITY = <<~RUBY
    resource_type :city do
      property :name
      property :weather

      desc 'Say what the weather is like'
      action :report_weather do
        puts "It is \#{weather} in \#{name}"
      end
    end
  RUBY

  def test_a_resource_type_gives_each_resource_its_properties_and_actions
    write('actions.rb', CITY + <<~RUBY)
      city :melbourne do
        name 'Melbourne'
        weather 'cold'
      end
      city :sydney do
        properties OpsChain.properties.melbourne_resource
        weather lazy { 'warm' }
      end
    RUBY
    assert_equal ['It is cold in Melbourne'], lines(action('melbourne:report_weather'))
    assert_equal ['It is warm in Melbourne'], lines(action('sydney:report_weather'))
    assert_match(/^opschain-action melbourne:report_weather +# Say what the weather is like$/, action('-T').stdout)
  end

  def test_a_controller_with_available_actions_or_its_own_lists
    write('actions.rb', <<~RUBY)
      class CityController
        def initialize(options) = @options = options
        def report_weather = puts("\#{@options[:name]} looks \#{@options.weather}")
        def buy_stamp = 'stamp'
      end

      class TownController
        def self.resource_type_properties = %i[name]
        def self.resource_type_actions = [{ name: :visit, description: 'Visit the town' }, :leave]
        def initialize(options) = @name = options[:name]
        def visit = puts("visiting \#{@name}")
        def leave = puts("leaving \#{@name}")
      end

      resource_type :city do
        controller CityController, available_actions: { report_weather: 'Report the weather' }
        property :name
        property :weather
        action :report_weather do
          puts 'and then the type action'
        end
        action :send_postcard do |action|
          puts "Sending a postcard from \#{name} with a \#{action.controller.buy_stamp}"
        end
      end

      resource_type :town do
        controller TownController
      end

      city :melbourne do
        properties({ name: 'Melbourne', weather: 'cold' })
      end
      town :ballarat do
        name 'Ballarat'
        available_actions :visit
      end
    RUBY
    assert_equal ['Melbourne looks cold', 'and then the type action'], lines(action('melbourne:report_weather'))
    assert_equal ['Sending a postcard from Melbourne with a stamp'], lines(action('melbourne:send_postcard'))
    assert_equal ['visiting Ballarat'], lines(action('ballarat:visit'))
    listing = action('-AT').stdout
    assert_match(/ballarat:visit +# Visit the town/, listing)
    refute_match(/ballarat:leave/, listing)
  end

  def test_a_controller_missing_an_action_method_is_reported
    write('actions.rb', <<~RUBY)
      class CityController
        def initialize(_) = nil
      end
      resource_type :city do
        controller CityController, available_actions: [:magic]
      end
    RUBY
    result = action('-AT')
    refute result.success?
    assert_match(/CityController does not define the action method magic/, result.stderr)
  end

  def test_namespaces_and_references_between_resources
    write('actions.rb', CITY + <<~RUBY)
      namespace :earth do
        namespace :australia do
          city :perth do
            name 'Perth'
            weather 'sunny'
          end
        end
        namespace :scotland do
          city :perth do
            name 'Perth'
            weather 'gloomy'
          end
        end
      end

      namespace :australia do
        city :capital do
          name 'Canberra'
        end
        city :sydney do
          name 'Sydney'
        end
        namespace :victoria do
          city :melbourne do
            name 'Melbourne'
            rival "\#{name}'s biggest rival is \#{sydney.properties.name}."
            country_capital ref('^australia:capital')
            action :rivalry do
              puts rival, country_capital.nil?
            end
            action :state_capital do
              puts "The capital of Victoria is \#{bendigo.properties.name}."
            end
          end
          city :bendigo do
            name 'Bendigo'
          end
          action :by_name do
            capital = 'melbourne'
            puts capital.properties.name
          end
        end
      end
    RUBY
    listing = action('-AT').stdout
    %w[earth:australia:perth:report_weather earth:scotland:perth:report_weather australia:victoria:melbourne:rivalry].each do |name|
      assert_match(/^opschain-action #{name} /, listing)
    end
    assert_equal ['It is gloomy in Perth'], lines(action('earth:scotland:perth:report_weather'))
    assert_equal ["Melbourne's biggest rival is Sydney.", 'true'], lines(action('australia:victoria:melbourne:rivalry'))
    assert_equal ['The capital of Victoria is Bendigo.'], lines(action('australia:victoria:melbourne:state_capital'))
    assert_equal ['Melbourne'], lines(action('australia:victoria:by_name'))
  end

  def test_lazy_values_are_worked_out_only_when_used
    write('actions.rb', CITY + <<~RUBY)
      city :melbourne do
        name 'Melbourne'
        weather lazy { raise 'weather asked for' }
      end
      city :sydney do
        name 'Sydney'
        weather lazy { 'fine' }
        action :check do
          puts weather.is_a?(LazyPropertyValue), weather.is_a?(String)
          weather.nil?
          puts weather.is_a?(LazyPropertyValue), weather.is_a?(String)
        end
      end
    RUBY
    assert_equal %w[true false false true], lines(action('sydney:check'))
  end
end
