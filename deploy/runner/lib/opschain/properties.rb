# frozen_string_literal: true

require 'hashie'

module OpsChain
  # Raised when code writes to a read-only view (OpsChain.properties, OpsChain.context, repository properties).
  class ReadOnlyError < StandardError; end

  # Properties with dot, symbol and string access (a Hashie::Mash): what OpsChain.properties_for(owner) returns.
  # Changes made to it become that owner's RFC 6902 properties_diffs when the step ends.
  class Properties < Hashie::Mash
    disable_warnings

    # The plain JSON value (string keys, symbols as strings) of any properties value.
    def self.plain(value)
      JSON.parse(JSON.generate(value.respond_to?(:to_hash) ? value.to_hash : value))
    end
  end

  # A deep, read-only Properties: every write, at any depth, raises ReadOnlyError naming where to write instead.
  class ReadOnlyProperties < Properties
    disable_warnings

    WRITERS = %i[[]= store custom_writer delete clear merge! update deep_merge! deep_update replace shift compact!
                 select! reject! filter! keep_if delete_if transform_values! transform_keys! default= default_proc=
                 compare_by_identity rehash initializing_reader underbang_reader assign_property].freeze

    # build(hash, what): a read-only copy of hash; what names the view in error messages.
    def self.build(hash, what)
      new(hash).tap { |view| view.lock!(what) }
    end

    WRITERS.each do |name|
      define_method(name) do |*args, &block|
        raise ReadOnlyError, "#{@read_only_what || 'these properties'} is read only#{hint}" if @read_only_what

        super(*args, &block)
      end
    end

    def lock!(what)
      each_value { |value| lock_value(value, what) }
      @read_only_what = what
      freeze
    end

    # Dot assignment reaches method_missing before []=; send it the same way.
    def method_missing(name, *args, &block)
      raise ReadOnlyError, "#{@read_only_what} is read only#{hint}" if @read_only_what && name.to_s.end_with?('=') && !args.empty?

      super
    end

    def respond_to_missing?(name, include_private = false) = super

    private

    def hint
      @read_only_what.to_s.start_with?('OpsChain.properties') ? ': change one owner with OpsChain.properties_for(:project|:environment|:asset…)' : ''
    end

    def lock_value(value, what)
      case value
      when ReadOnlyProperties then value.lock!(what)
      when Array then value.each { |item| lock_value(item, what) }.freeze
      when String then value.freeze
      end
    end
  end

  # Deep merge of plain JSON objects: objects merge key by key, anything else (arrays too) is replaced.
  def self.deep_merge(left, right)
    left.merge(right) { |_, a, b| a.is_a?(Hash) && b.is_a?(Hash) ? deep_merge(a, b) : b }
  end
end
